"""The data path: annotation formats -> records -> video decoding + sampling + transforms -> batches."""
