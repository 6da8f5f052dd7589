"""The coordinator's view of its site relays: which devices each relay reports online (a relay's status stands for
its devices' births and wills), which site owns which device id, and which ids clash with another site or a direct
device. Pure logic over the decoded relay_status messages; the engine applies what it returns to the rounds."""

from __future__ import annotations

from dataclasses import dataclass, field

from federation.protocol.relay_messages import RelayStatus


@dataclass(frozen=True)
class SiteChange:
    """What one relay_status changed: devices now online through the site (id -> fitness error, "" if it can train),
    devices gone, and listed ids refused because another site or a direct device holds them (id -> holder)."""

    site: str
    online: dict[str, str]
    offline: frozenset[str]
    clashes: dict[str, str]
    relay_went_offline: bool = False


@dataclass
class SiteRoster:
    """Sites and their devices, as their relays report them."""

    devices: dict[str, dict[str, str]] = field(default_factory=dict)   # site online -> device id -> error
    owner: dict[str, str] = field(default_factory=dict)                # device id -> its site
    errors: dict[str, str] = field(default_factory=dict)               # site -> why its relay can't relay the run

    def site_of(self, device_id: str) -> str | None:
        return self.owner.get(device_id)

    def summary(self) -> dict[str, int]:
        """Online sites and their devices online, for coordinator_state.sites and the panel."""
        return {site: len(devices) for site, devices in sorted(self.devices.items())}

    def apply(self, site: str, status: RelayStatus | None, direct_online: set[str]) -> SiteChange:
        """A relay's status (None: its retained status was cleared). `direct_online`: devices online through their
        own births, whose ids a site may not claim."""
        before = self.devices.get(site, {})
        if status is None or status.status != "online":
            self.devices.pop(site, None)
            self.errors.pop(site, None)
            for device_id in before:
                self.owner.pop(device_id, None)
            return SiteChange(site, {}, frozenset(before), {}, relay_went_offline=bool(before) or status is not None)
        self.errors[site] = status.error
        now: dict[str, str] = {}
        clashes: dict[str, str] = {}
        for device in status.devices:
            holder = self.owner.get(device.id)
            if holder is not None and holder != site:
                clashes[device.id] = f"site {holder}"
            elif holder is None and device.id in direct_online:
                clashes[device.id] = "a direct device"
            else:
                now[device.id] = device.error
        for device_id in set(before) - set(now):
            self.owner.pop(device_id, None)
        for device_id in now:
            self.owner[device_id] = site
        self.devices[site] = now
        changed = {d: e for d, e in now.items() if before.get(d) != e or d not in before}
        return SiteChange(site, changed, frozenset(set(before) - set(now)), clashes)
