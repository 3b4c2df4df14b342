"""How a model is measured: rate-distortion with real bitstreams, decode-time benchmarks, MAC
counts, parameter counts and the cross-environment conformance matrix."""
