"""Infrastructure: storage (local, file:// and s3://), the model bundle, image decoding."""
