"""How frontends find scheduler replicas (static list, DNS, Redis) and how schedulers register."""

from infermesh_shared.discovery.advertised_address import advertised_address
from infermesh_shared.discovery.discovery_factory import make_discovery
from infermesh_shared.discovery.dns_discovery import DnsDiscovery, join_host_port, split_host_port
from infermesh_shared.discovery.redis_discovery import RedisDiscovery
from infermesh_shared.discovery.redis_registration import RedisRegistration
from infermesh_shared.discovery.replica_discovery import DiscoveryError, ReplicaDiscovery, StaticDiscovery

__all__ = [
    "advertised_address",
    "DiscoveryError",
    "DnsDiscovery",
    "RedisDiscovery",
    "RedisRegistration",
    "ReplicaDiscovery",
    "StaticDiscovery",
    "join_host_port",
    "make_discovery",
    "split_host_port",
]
