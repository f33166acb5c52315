"""Price discovery: feeds (aws, gcp, azure, replay), the GPU catalog, normalized quotes, egress prices."""
