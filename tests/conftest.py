"""Suite-wide settings: one torch thread per test process, because the suite runs on 2 cores and
small float64 kernels (BatchNorm especially) slow down by orders of magnitude when oversubscribed."""

import torch

torch.set_num_threads(1)
