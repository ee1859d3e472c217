"""The single-device op: references (naive), the chunked PyTorch path, and the custom op."""
