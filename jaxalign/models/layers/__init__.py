"""The shared layer library every model family composes: parameters, linear maps, norms, RoPE,
attention, dense and mixture-of-experts MLPs. Pure functions of arrays; the families own the wiring."""
