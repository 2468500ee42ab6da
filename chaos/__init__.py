"""Break regions on purpose: simulated regions, fault knobs and failover drills."""
