"""Serving: SavedModel export for TF Serving (`export`) and REST/gRPC clients (`client`)."""
