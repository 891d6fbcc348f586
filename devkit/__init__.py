"""What is not the product: benchmarks, fault scenarios, throwaway local services and test helpers.

Installed with the project so that ``streetlight bench`` and ``streetlight faults`` work, but no product
module imports it."""
