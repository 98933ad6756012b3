"""Evaluation the product runs: compatibility matrices, upgrade chains and heterogeneous (edge/cloud) search."""
