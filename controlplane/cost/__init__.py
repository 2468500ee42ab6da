"""The cost model: price sheets, traffic profiles, the pure monthly estimate, its tables and charts, and the
daemon's live cost per hour."""
