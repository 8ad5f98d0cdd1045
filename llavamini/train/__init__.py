"""Two-stage training of LLaVA-Mini with the Hugging Face Trainer (DeepSpeed, torchrun)."""
