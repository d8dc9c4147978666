"""The shapes world's network variants (the CPU demo, its guides and prior), the tables
`registry` serves under the names `shapes_*`; see `registry` for what a table is."""

# Shapes-world CPU demo, base 32x32: a standard U-Net (Imagen's base model
# type) with 32 -> 16 -> 8 and attention (self + text) only below 32x32.
# text_dim defaults to 64 (the built-in text encoders are small); configs set
# it to the encoder's `.dim`. Measured train step (fwd + bwd + Adam, float32,
# batch 32, 2 shared CPU cores): tiny 1.2M params ~1.0 s, small 7.7M ~3.7 s.
# For a faster demo override e.g. channels=16 (~4x fewer FLOPs).
SHAPES_BASE32 = {
    "tiny": dict(
        resolution=32,
        text_dim=64,
        channels=32,
        channel_mult=(1, 2, 2),
        num_res_blocks=1,
        attention_resolutions=(8,),
        per_head_channels=32,
        embed_dim=128,
        cond_dim=64,
        freq_dim=32,
        num_groups=8,
    ),
    "small": dict(
        resolution=32,
        text_dim=64,
        channels=64,
        channel_mult=(1, 2, 2),
        num_res_blocks=2,
        attention_resolutions=(16, 8),
        per_head_channels=32,
        embed_dim=256,
        cond_dim=128,
        freq_dim=64,
        num_groups=16,
    ),
}

# Shapes-world CPU demo, SR 32->64: Efficient U-Net 64 -> 32 -> 16 -> 8, one
# full-resolution conv each way, attention (self + text) only at 8x8.
# Measured as above: tiny 0.6M params ~0.5 s, small 4.1M ~1.6 s per step.
SHAPES_SR64 = {
    "tiny": dict(
        resolution=64,
        lowres_resolution=32,
        text_dim=64,
        init_channels=16,
        channels=(16, 32, 64),
        num_res_blocks=(1, 1, 2),
        strides=(2, 2, 2),
        self_attention=(False, False, True),
        cross_attention=(False, False, True),
        per_head_channels=32,
        embed_dim=128,
        cond_dim=64,
        freq_dim=32,
        num_groups=8,
    ),
    "small": dict(
        resolution=64,
        lowres_resolution=32,
        text_dim=64,
        init_channels=32,
        channels=(32, 64, 128),
        num_res_blocks=(1, 2, 4),
        strides=(2, 2, 2),
        self_attention=(False, False, True),
        cross_attention=(False, False, True),
        per_head_channels=32,
        embed_dim=256,
        cond_dim=128,
        freq_dim=64,
        num_groups=16,
    ),
}

# Shapes-world CPU demo, base 16x16: on two CPU cores a 32x32 step costs 4x a
# 16x16 one while XLA's small-channel convolutions run far below peak, so the
# demo's base works at 16x16 (16 -> 8 -> 4) with self + text attention at 8x8
# and 4x4, and super-resolution stages add the detail.
SHAPES_BASE16 = {
    "tiny": dict(
        resolution=16,
        text_dim=64,
        channels=32,
        channel_mult=(1, 2, 2),
        num_res_blocks=2,
        attention_resolutions=(8, 4),
        per_head_channels=32,
        embed_dim=128,
        cond_dim=64,
        freq_dim=32,
        num_groups=8,
    ),
    "small": dict(
        resolution=16,
        text_dim=64,
        channels=64,
        channel_mult=(1, 2, 2),
        num_res_blocks=2,
        attention_resolutions=(8, 4),
        per_head_channels=32,
        embed_dim=256,
        cond_dim=128,
        freq_dim=64,
        num_groups=16,
    ),
}

# Shapes-world CPU demo, SR 16->32: Efficient U-Net 32 -> 16 -> 8 -> 4 with
# attention (self + text) at 4x4 only.
SHAPES_SR32 = {
    "tiny": dict(
        resolution=32,
        lowres_resolution=16,
        text_dim=64,
        init_channels=16,
        channels=(16, 32, 64),
        num_res_blocks=(1, 1, 2),
        strides=(2, 2, 2),
        self_attention=(False, False, True),
        cross_attention=(False, False, True),
        per_head_channels=32,
        embed_dim=128,
        cond_dim=64,
        freq_dim=32,
        num_groups=8,
    ),
    "small": dict(
        resolution=32,
        lowres_resolution=16,
        text_dim=64,
        init_channels=32,
        channels=(32, 64, 128),
        num_res_blocks=(1, 2, 4),
        strides=(2, 2, 2),
        self_attention=(False, False, True),
        cross_attention=(False, False, True),
        per_head_channels=32,
        embed_dim=256,
        cond_dim=128,
        freq_dim=64,
        num_groups=16,
    ),
}

# The noise-aware classifier of classifier guidance on the 16x16 base (ADM's half U-Net,
# models/classifier.py). Heads: the shapes world's label groups of a scene's first object,
# colour (6), shape (3), size (2), place (5) (data.shapes_world.LABEL_GROUPS; the classifier task checks
# they agree). Measured as above: tiny 0.3M params.
SHAPES_CLASSIFIER16 = {
    "tiny": dict(
        resolution=16,
        num_classes=(6, 3, 2, 5),
        out_dim=64,
        channels=32,
        channel_mult=(1, 2, 2),
        num_res_blocks=1,
        attention_resolutions=(4,),
        per_head_channels=32,
        embed_dim=128,
        freq_dim=32,
        num_groups=8,
    ),
    "small": dict(
        resolution=16,
        num_classes=(6, 3, 2, 5),
        out_dim=128,
        channels=64,
        channel_mult=(1, 2, 2),
        num_res_blocks=2,
        attention_resolutions=(8, 4),
        per_head_channels=32,
        embed_dim=256,
        freq_dim=64,
        num_groups=16,
    ),
}

# GLIDE's noised CLIP on the 16x16 base (models/noisy_clip.py): the classifier's half U-Net
# + a projection, and a byte-level causal text transformer (ByT5 ids, captions up to
# max_length bytes + EOS: 80 fits one-object captions). tiny: 0.62M params, small: 3.9M.
SHAPES_CLIP16 = {
    "tiny": dict(
        resolution=16,
        out_dim=64,
        channels=32,
        channel_mult=(1, 2, 2),
        num_res_blocks=1,
        attention_resolutions=(4,),
        per_head_channels=32,
        embed_dim=128,
        freq_dim=32,
        num_groups=8,
        projection_dim=64,
        max_length=80,
        text_width=64,
        text_layers=2,
        text_heads=2,
    ),
    "small": dict(
        resolution=16,
        out_dim=128,
        channels=64,
        channel_mult=(1, 2, 2),
        num_res_blocks=2,
        attention_resolutions=(8, 4),
        per_head_channels=32,
        embed_dim=256,
        freq_dim=64,
        num_groups=16,
        projection_dim=128,
        max_length=80,
        text_width=128,
        text_layers=4,
        text_heads=4,
    ),
}

# The unCLIP diffusion prior (models/prior.py): caption -> CLIP image embedding. Shapes:
# embed_dim is shapes_clip16/tiny's projection_dim (override it for another CLIP), text_dim
# byt5-tiny-random's (tiny: 0.85M params). unclip_prior/paper: DALL-E 2's prior (Ramesh et
# al. 2022: ~1B, width 2048, 24 blocks, 32 heads; 1.23B here) over T5-XXL tokens, for CLIP
# ViT-L/14 embeddings (768).
_P = dict(embed_dim=SHAPES_CLIP16["tiny"]["projection_dim"], text_dim=64)
SHAPES_PRIOR = {
    "tiny": dict(_P, width=128, depth=4, num_heads=4),
    "small": dict(_P, width=256, depth=6, num_heads=8),
}
