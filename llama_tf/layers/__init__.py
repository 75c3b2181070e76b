"""The layers the notebooks build and export, one module each: `rms_norm` (notebook 02), `feed_forward`
(03), `attention` (05), `transformer_block` (06), `tiled_attention` (10, which plugs into `Attention`),
and `projection` (12: the bias-free product every matrix of the model is, with its weight formats and
compiled one-token path; notebook 12 also appends `kernel_step` to `attention`, the one-token attention
kernel plugged into `Attention.step_impl`). Edit the notebooks, not these modules (`nbdev-export` writes them)."""
