"""Conv-TasNet (Luo & Mesgarani 2019). Placeholder: being written."""
