"""trace_summary: folding a profiler trace by primitive, pass, scope and kernel library, on a
hand-made trace whose sums are known, and on a real `jax.profiler` trace of a jitted conv + dot."""

import jax
import jax.numpy as jnp
import pytest

from imagen_jax.perf import trace_summary

HLO = """\
HloModule jit_step, entry_computation_layout={()}

%fused_computation.1 (param_0: f32[2,4,4,3], param_1: f32[3,3,3,8]) -> f32[2,4,4,8] {
  %param_0 = f32[2,4,4,3]{3,2,1,0} parameter(0)
  %param_1 = f32[3,3,3,8]{3,2,1,0} parameter(1)
  ROOT %convolution.3 = f32[2,4,4,8]{3,2,1,0} convolution(%param_0, %param_1), window={size=3x3}, metadata={op_name="jit(step)/transpose(jvp(UNet))/down_0/res_1/conv_general_dilated"}
}

ENTRY %main.9 (Arg_0.1: f32[2,4,4,3]) -> f32[2,8] {
  %ynn_fusion.7 = f32[2,4,4,8]{3,2,1,0} fusion(%Arg_0.1, %c), kind=kCustom, calls=%fused_computation.1, backend_config={"fusion_config":{"kind":"__ynn_fusion"}}
  %dot.2 = f32[2,8]{1,0} dot(%a, %b), metadata={op_name="jit(step)/jvp(UNet)/up_1/attn_0/dot_general"}
  ROOT %copy.4 = f32[2,8]{1,0} copy(%dot.2)
}
"""


def test_op_table_takes_a_fusions_metadata_from_its_root():
  ops = trace_summary.op_table(HLO)
  assert ops["ynn_fusion.7"]["library"] == "__ynn_fusion"
  assert ops["ynn_fusion.7"]["op_name"].endswith("down_0/res_1/conv_general_dilated")
  assert ops["dot.2"] == {
      "opcode": "dot",
      "library": "",
      "calls": "",
      "op_name": "jit(step)/jvp(UNet)/up_1/attn_0/dot_general",
  }
  assert ops["copy.4"]["op_name"] == ""


@pytest.mark.parametrize(
    "op_name,expected",
    [
        (
            "jit(step)/transpose(jvp(UNet))/down_0/res_1/conv_general_dilated",
            ("backward", "UNet/down_0", "conv_general_dilated"),
        ),
        ("jit(step)/jvp(UNet)/up_1/attn_0/dot_general", ("forward", "UNet/up_1", "dot_general")),
        ("jit(train_step_body)/add", ("forward", "", "add")),
        (
            "jit(step)/transpose(jvp(UNet))/(cond/dense/dot_general:mid/attn/reduce_sum)",
            ("backward", "UNet/(merged)", ""),
        ),
        ("", ("", "", "")),
    ],
)
def test_split_op_name(op_name, expected):
  assert trace_summary.split_op_name(op_name) == expected


def test_fold_sums_each_table_to_the_traced_time():
  events = [
      ("ynn_fusion.7", 3000.0),
      ("dot.2", 1000.0),
      ("ynn_fusion.7", 1000.0),
      ("copy.4", 500.0),
      ("unknown.5", 500.0),
  ]
  out = trace_summary.fold(events, trace_summary.op_table(HLO), steps=2)
  assert out["traced_seconds_per_step"] == pytest.approx(3e-3)  # 6000 us over 2 steps
  prim = dict(out["by_primitive"])
  assert prim == pytest.approx(
      {"conv_general_dilated": 2e-3, "dot_general": 0.5e-3, "copy": 0.25e-3, "unknown": 0.25e-3}
  )
  assert dict(out["by_pass"]) == pytest.approx(
      {"backward": 2e-3, "forward": 0.5e-3, "other": 0.5e-3}
  )
  assert dict(out["by_library"])["__ynn_fusion"] == pytest.approx(2e-3)
  assert dict(out["by_scope"])["UNet/down_0"] == pytest.approx(2e-3)
  assert dict(out["by_layer"])["UNet/down_0/res_1 conv_general_dilated"] == pytest.approx(2e-3)
  for key in ("by_primitive", "by_pass", "by_scope", "by_layer", "by_library", "by_op"):
    assert sum(s for _, s in out[key]) == pytest.approx(out["traced_seconds_per_step"])
  assert "conv_general_dilated" in trace_summary.format_summary(out)


def test_missing_trace_names_the_directory(tmp_path):
  with pytest.raises(FileNotFoundError, match=str(tmp_path)):
    trace_summary.summarize(str(tmp_path), HLO)
  with pytest.raises(ValueError, match="steps=0"):
    trace_summary.fold([], {}, steps=0)


def test_a_real_trace_of_a_conv_and_a_dot(tmp_path):
  def model(x, w, m):
    y = jax.lax.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return jnp.tanh(y.reshape(y.shape[0], -1) @ m)

  args = (
      jnp.ones((8, 32, 32, 16)),
      jnp.ones((3, 3, 16, 16)) * 0.01,
      jnp.ones((32 * 32 * 16, 64)) * 0.01,
  )
  compiled = jax.jit(model).lower(*args).compile()
  trace_summary.capture(lambda: compiled(*args), 2, str(tmp_path))
  out = trace_summary.summarize(str(tmp_path), compiled.as_text(), steps=2, top=50)
  prims = dict(out["by_primitive"])
  assert out["traced_seconds_per_step"] > 0
  assert prims.get("conv_general_dilated", 0) > 0 and prims.get("dot_general", 0) > 0
  assert sum(prims.values()) == pytest.approx(out["traced_seconds_per_step"])
