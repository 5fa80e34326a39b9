"""The variants `tools.train_bench` times, by name: shared by its command line (light, for --help) and its work."""

VARIANTS = ("recipe", "device_loader", "bf16", "channels_last", "compile")  # each adds to the one before
FP32_CHANNELS_LAST = "fp32_channels_last"  # not in the chain: channels_last without bf16, asked for by name
