"""Training loop and stages (btf, finetune, selftrain, evaluate). Lands in its own issues."""
