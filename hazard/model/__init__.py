"""Model code: loading and label scoring, the engines, LoRA/DeepSpeed helpers, and the
training recipe's steps (`training/`)."""
