"""Applies site relays' events to a running coordinator: a relay's status as births and wills of its devices, and a
site's partial aggregate as the updates of every device it lists (FedAvg adds n_site x mean_site; each device counts
as received for cohort, quorum, duplicate and late accounting). Also counts the work lost with a relay that died."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from coordinator.aggregation import ClientResult
from coordinator.relay_intake import PartialReceived, RelayEvent, SiteStatusReceived

if TYPE_CHECKING:
    from coordinator.engine import Coordinator

log = logging.getLogger(__name__)


def relay_unsupported(c: "Coordinator") -> str:
    """Why this run's aggregation can't take a site's pre-aggregated mean ("" when it can), with the fix."""
    a = c.settings.aggregation
    if a.mode == "async":
        problem = "asynchronous rounds ([aggregation] mode = async) weigh each update by its own staleness"
    elif a.rule != "fedavg":
        problem = f"the {a.rule} rule needs every device's own update"
    elif a.clip_norm > 0 or a.dp_noise_multiplier > 0:
        problem = "clipping and differential privacy act on every device's own update"
    else:
        return ""
    return (f"{problem}, which a site relay pre-aggregates: use [aggregation] rule = fedavg without clipping or DP "
            "in sync mode, or connect the site's devices to the central broker")


def handle_relay_event(c: "Coordinator", event: RelayEvent) -> None:
    if isinstance(event, SiteStatusReceived):
        _site_status(c, event)
    else:
        _partial(c, event)


def _site_status(c: "Coordinator", event: SiteStatusReceived) -> None:
    change = c.sites.apply(event.site, event.status, c.rounds.online - set(c.sites.owner))
    why = relay_unsupported(c) or (event.status.error if event.status else "")
    for device_id, holder in change.clashes.items():
        c.drops.record(f"site {event.site}", "id_clash", f"site {event.site} lists device {device_id}, which "
                                                         f"{holder} holds: device ids must be unique across the fleet")
    for device_id in change.offline:
        if c.rounds.client_offline(device_id) and c.rounds.tracker is not None and change.relay_went_offline \
                and c.rounds.tracker.in_cohort(device_id) and device_id not in c.rounds.tracker.received:
            c.lost_with_relay[device_id] = event.site
        c.progress.client_offline(device_id)
    if change.relay_went_offline:
        log.warning("site %s: relay offline; its %d devices are offline", event.site, len(change.offline))
    for device_id, error in change.online.items():
        if why:   # devices behind a relay can't take part in this run: never in a cohort
            continue
        c._note_fitness(device_id, error)
        c.rounds.client_online(device_id, error)
        c.progress.client_online(device_id)
        c.lost_with_relay.pop(device_id, None)
    if why and event.status is not None and event.status.status == "online" and event.site not in c.sites_refused:
        c.sites_refused.add(event.site)
        log.error("site %s: its %d devices can't take part through their relay: %s", event.site,
                  len(event.status.devices), why)
    elif change.online and not why:
        log.info("site %s: %d devices online through its relay (%d at the site)", event.site, len(change.online),
                 len(c.sites.devices.get(event.site, {})))
    c._state_dirty = True   # published by the engine, coalesced (at most a few times a second)


def _partial(c: "Coordinator", event: PartialReceived) -> None:
    partial = event.partial
    for client in partial.clients:
        if c.rounds.accept(client.id, partial.round):   # seen offline: an update proves it is there
            c.progress.client_online(client.id)
            c._state_dirty = True
    weights = [t for _, t in partial.tensors]
    c.aggregator.add(ClientResult(f"site {event.site}", partial.num_examples, weights))   # type: ignore[arg-type]
    train_s = partial.metrics.get("train_time_s", 0.0)
    for i, client in enumerate(partial.clients):   # bytes and slowest training once, each device's examples
        c.stats.add(client.id, event.size if i == 0 else 0, client.num_examples, train_s if i == 0 else 0.0)
    tracker = c.rounds.tracker
    assert tracker is not None
    c.progress.update_accepted(f"site {event.site}", len(tracker.received), tracker.target)
    log.info("round %d: partial %d of site %s: %d devices, %d examples (%d/%d updates)", tracker.round,
             partial.part, event.site, len(partial.clients), partial.num_examples, len(tracker.received),
             tracker.target)


def count_lost_with_relay(c: "Coordinator") -> None:
    """At a round's close: cohort members whose relay died while they had not been counted, and that were not
    counted since (the relay came back and forwarded them, or they re-sent), are `lost_with_relay`."""
    tracker = c.rounds.tracker
    received = tracker.received if tracker is not None else set()
    for device_id, site in sorted(c.lost_with_relay.items()):
        if device_id not in received:
            c.drops.record(device_id, "lost_with_relay", f"its relay (site {site}) went offline before "
                                                         "forwarding its work of this round")
    c.lost_with_relay.clear()
