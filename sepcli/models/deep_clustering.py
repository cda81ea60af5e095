"""Deep Clustering (Hershey et al. 2016). Placeholder: being written."""
