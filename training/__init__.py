"""Training: Yelp reviews -> PyTorch -> MLflow -> self-contained ONNX -> Model Registry."""
