"""The billing vendor's package, kept apart from the service as if it were third-party.

`sdk` is the vendor's blocking client; `stub` is a small stand-in for the billing service
(development, tests, benchmarks). The service reaches the SDK only through its offload helpers.
"""

from analytics.billing.sdk import BillingClient, BillingError, UsageReceipt

__all__ = ["BillingClient", "BillingError", "UsageReceipt"]
