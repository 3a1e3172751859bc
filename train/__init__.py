"""Training a LoRA inside the graph (built on lora_ops)."""
