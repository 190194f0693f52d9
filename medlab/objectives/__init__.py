"""One LightningModule per objective; each holds a model and its loss and knows nothing of devices."""
