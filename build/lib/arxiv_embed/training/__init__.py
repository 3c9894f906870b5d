"""Fine-tuning: data, losses, trainer wiring, checkpoints and distributed processes."""
