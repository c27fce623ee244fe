"""AiiDA plugin for temperature-dependent band gaps of solid solutions with ML potentials and GNNs."""

__version__ = "0.1.0"
