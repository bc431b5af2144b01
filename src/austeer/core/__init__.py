"""The core: sites (every family fact), pairs, the collector, momentum, attribution, the steer spec, gain hooks
and folding, fit, sharded fit."""
