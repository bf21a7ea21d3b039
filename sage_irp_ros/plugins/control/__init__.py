"""The control plugin: paths on occupancy grids refined until feasible (issue #13)."""
