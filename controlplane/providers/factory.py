"""Which providers a policy asks for, built and ready to start."""

from __future__ import annotations

from collections.abc import Collection

from controlplane.policy import Policy
from controlplane.providers.base import ManagedProvider


def build_providers(policy: Policy, disabled: Collection[str] = ()) -> list[ManagedProvider]:
    """One provider per enabled instance, in a fixed order; `disabled` names kinds left out (the demo
    without HAProxy). Cloud providers are imported only when a policy names them: boto3 costs start-up."""
    # Imported here so a policy without HAProxy never imports its provider, and to keep start-up lean.
    from controlplane.providers.haproxy import HaproxyProvider
    from controlplane.providers.localdns import LocalDnsProvider
    from controlplane.providers.memory import MemoryProvider

    settings = policy.providers
    providers: list[ManagedProvider] = []
    if settings.localdns is not None and settings.localdns.enabled and "localdns" not in disabled:
        providers.append(LocalDnsProvider(policy, workers=settings.localdns.workers))
    if settings.haproxy is not None and settings.haproxy.enabled and "haproxy" not in disabled:
        providers.append(HaproxyProvider(policy))
    if settings.memory and "memory" not in disabled:
        providers.append(MemoryProvider(policy))
    if settings.route53_list and "route53" not in disabled:
        from controlplane.providers.route53 import Route53Provider

        providers += [Route53Provider(policy, zone) for zone in settings.route53_list if zone.enabled]
    if settings.cloud_dns_list and "cloud_dns" not in disabled:
        from controlplane.providers.clouddns import CloudDnsProvider

        providers += [CloudDnsProvider(policy, zone) for zone in settings.cloud_dns_list if zone.enabled]
    if settings.global_accelerator_list and "global_accelerator" not in disabled:
        from controlplane.providers.globalaccelerator import GlobalAcceleratorProvider

        providers += [
            GlobalAcceleratorProvider(policy, ga) for ga in settings.global_accelerator_list if ga.enabled
        ]
    if settings.powerdns_list and "powerdns" not in disabled:
        from controlplane.providers.powerdns import PowerDnsProvider

        providers += [PowerDnsProvider(policy, zone) for zone in settings.powerdns_list if zone.enabled]
    return providers
