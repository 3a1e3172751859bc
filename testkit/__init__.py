"""Test, demo and benchmark support for LoRA Lab: the real ComfyUI host, models and fixtures."""
