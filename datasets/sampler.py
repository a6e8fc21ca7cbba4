"""TrainSampler: an infinite, resumable, sharded stream of (index, stream_id)."""
import numpy as np
from torch.utils.data import Sampler


class TrainSampler(Sampler):
    """Infinite training order shared by all ranks.

    The global stream is a sequence of global batches of batch_size * world_size samples; each
    epoch is a fresh permutation seeded by (seed, epoch) with the incomplete last global batch
    dropped (drop_last). Rank r takes its slice [r*batch_size, (r+1)*batch_size) of every global
    batch. stream_id is the sample's position in the global stream, so the dataset's
    augmentation draws depend only on (seed, stream_id): the same run with 1 x 16 or 2 x 8
    sees the same samples with the same augmentation. `start_iter` skips that many global
    batches (for resuming). A dataset smaller than one global batch repeats its permutation.
    Use with DataLoader(ds, batch_size=batch_size, sampler=sampler).
    """

    def __init__(self, num_samples, batch_size, seed=1208, rank=0, world_size=1, start_iter=0):
        if num_samples < 1:
            raise ValueError('TrainSampler: the dataset is empty')
        if not 0 <= rank < world_size:
            raise ValueError(f'TrainSampler: rank {rank} outside world_size {world_size}')
        self.num_samples, self.batch_size = num_samples, batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.start_iter = start_iter
        self.global_batch = batch_size * world_size
        self.iters_per_epoch = max(num_samples // self.global_batch, 1)

    def epoch_order(self, epoch):
        """Sample indices of one epoch (length iters_per_epoch * global batch)."""
        order = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
        return np.resize(order, self.iters_per_epoch * self.global_batch)

    def __iter__(self):
        iteration = self.start_iter
        epoch, order = None, None
        while True:
            if iteration // self.iters_per_epoch != epoch:
                epoch = iteration // self.iters_per_epoch
                order = self.epoch_order(epoch)
            first = (iteration % self.iters_per_epoch) * self.global_batch
            first += self.rank * self.batch_size
            stream_first = iteration * self.global_batch + self.rank * self.batch_size
            for k in range(self.batch_size):
                yield int(order[first + k]), stream_first + k
            iteration += 1
