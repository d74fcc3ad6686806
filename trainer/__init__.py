"""The paper's two-tower AlexNet, its exact SGD recipe, the training loop, checkpoints and figures."""
