"""Error types of LoRA Lab.

Every error names the problem and the fix, so a user reading it in ComfyUI's error dialog knows what
to do next. All of them are ``ValueError`` subclasses: bad input, never a crash of ours.
"""

from __future__ import annotations


class LoraLabError(ValueError):
    """Base error: ``problem`` says what is wrong, ``fix`` what the user can do about it."""

    def __init__(self, problem: str, fix: str = ""):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem} Fix: {fix}" if fix else problem)


class LoraFileError(LoraLabError):
    """The file is missing, unreadable, truncated, not safetensors, or holds no LoRA weights."""


class FamilyMismatchError(LoraLabError):
    """The LoRA was made for another base-model family than the model it is applied to."""


class ShapeMismatchError(LoraLabError):
    """A LoRA target's delta does not have the shape of the model weight it maps to."""


class NonFiniteError(LoraLabError):
    """The file, or a merged weight, holds NaN or Inf values."""


class OverflowRiskError(LoraLabError):
    """W + dW does not fit the weight's dtype (fp16 values of 65520 and more become inf): it would render black."""
