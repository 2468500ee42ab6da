"""Providers: make the outside world (DNS, load balancers) match a routing plan."""
