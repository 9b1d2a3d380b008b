"""Training: caption datasets, synthetic scenes, losses and the JOINT/SEP fine-tuning loop."""
