"""Using a trained run: recommendations, similar items, the HTTP service and its web page."""
