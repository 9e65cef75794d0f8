"""hbt.export: an encoder source to a self-describing ONNX bundle (installed from ``export/``)."""
