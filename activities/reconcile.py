"""The reconcile activity: billing's reconciliation (billing/reconcile.py), run by the
Reconcile workflow its Temporal Schedule starts on the housekeeping queue."""

from __future__ import annotations

import stripe
from temporalio import activity

from activities.runtime import Runtime
from billing import payments
from billing.reconcile import Reconciler
from workflows import contract
from workflows.contract import ReconcileReport


class ReconcileActivities:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self._stripe: stripe.StripeClient | None = None
        self._stripe_made = False

    def stripe_client(self) -> stripe.StripeClient | None:
        """Made at the first run (not at the worker's start), then kept."""
        if not self._stripe_made:
            self._stripe = payments.stripe_client(self.rt.settings)
            self._stripe_made = True
        return self._stripe

    @activity.defn(name=contract.RECONCILE)
    async def reconcile(self) -> ReconcileReport:
        info = activity.info()
        reconciler = Reconciler(
            self.rt.db,
            self.rt.settings,
            activity.client(),
            self.stripe_client(),
            # one alert per run, whoever retries it
            source_key=f"reconcile:{info.workflow_id}:{info.workflow_run_id}",
            heartbeat=activity.heartbeat,
        )
        return await reconciler.run()
