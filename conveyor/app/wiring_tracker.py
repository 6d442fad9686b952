"""Factories of the tracker-side entries of the wiring table: TrackerSync, Intake, Reconciler.

They share the Plane client the TrackerSync entry makes (`Context.plane`), so they
start in that order. Kept apart to keep `conveyor.app.wiring` small.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pykka

from actors.intake import Intake
from actors.reconciler import Reconciler
from bus.bridge import Store
from conveyor.app.clients import start_tracker_sync
from conveyor.errors import ConveyorError

if TYPE_CHECKING:
    from conveyor.app.wiring import Context

Ref = pykka.ActorRef[Any]


def tracker_sync(ctx: Context, _store: Store[Any] | None) -> Ref:
    """TrackerSync over the configured tracker, its alert comments in the effect ledger."""
    sync, plane = start_tracker_sync(
        ctx.cfg, ctx.clock, ctx.ref("stage_engine"), ledger=ctx.ledger("tracker_sync")
    )
    if plane is not None:
        ctx.plane = plane
        ctx.closers.append(plane.close)
    return sync


def intake(ctx: Context, store: Store[Any] | None) -> Ref:
    """Intake, over its bucket of the state last acted on per Plane card."""
    if store is None:
        raise ConveyorError("intake's entry names no bucket")
    plane = ctx.plane
    return Intake.start(
        ctx.ref("stage_engine"),
        ctx.cfg,
        resolve_state=plane.resolve_state if plane is not None else None,
        cards=store,
        clock=ctx.clock,
    )


def reconciler(ctx: Context, _store: Store[Any] | None) -> Ref:
    """The Reconciler, polling every configured Plane project when the tracker is Plane."""
    plane = ctx.plane
    projects = [r.plane_project for r in ctx.cfg.repos if r.plane_project]
    return Reconciler.start(
        ctx.ref("stage_engine"),
        ctx.bus,
        ctx.clock,
        ctx.cfg,
        poll=plane.poller(projects) if plane is not None and projects else None,
    )
