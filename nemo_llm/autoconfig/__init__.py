"""Hyper-parameter auto-configurator: an analytical estimator of training and inference layouts
(FLOPs, memory, communication, time), the layout search, and measured confirmation of its picks."""
