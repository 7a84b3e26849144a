"""masked-iclora trainer: dataset preflight and the masked IC-LoRA trainer."""
