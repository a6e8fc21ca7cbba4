"""DataLoaders of the programs: OpenCV threads, worker defaults, batching of test samples."""
import os

import cv2
import torch
from torch.utils.data import DataLoader


def single_thread_opencv(_worker_id=None):
    """cv2.setNumThreads(0): OpenCV works on the calling thread only.

    The DataLoader workers are the parallelism; an OpenCV pool in each of them (and in the main
    process, which runs the pipeline when there are no workers) would oversubscribe the CPUs.
    Called in the main process before the workers fork too, so they inherit no pool.
    """
    cv2.setNumThreads(0)


def cpu_count():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:          # not Linux
        return os.cpu_count() or 1


def default_num_workers(device_type, processes_per_node=None):
    """Data workers per process: on CUDA the CPUs of this process's share of the node (the
    loader must keep up with the GPU), on CPU none (the pipeline would take cores from the
    training step, which needs ~50x longer per pair)."""
    if device_type != 'cuda':
        return 0
    processes = processes_per_node or int(os.environ.get('LOCAL_WORLD_SIZE', 1))
    return max(1, cpu_count() // max(processes, 1))


def train_loader(dataset, sampler, batch_size, num_workers, pin_memory=False):
    """The training DataLoader: persistent workers with single-threaded OpenCV."""
    single_thread_opencv()
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=True,
                      num_workers=num_workers, persistent_workers=num_workers > 0,
                      pin_memory=pin_memory,
                      worker_init_fn=single_thread_opencv if num_workers else None)


def collate_by_shape(samples):
    """A list of test samples -> list of sub-batches of equal image and label shape, each a
    dict of stacked tensors (`img`, `label`) and lists (the rest). Test images of a split may
    differ in size; a sub-batch is one forward pass. pin_memory pins the nested tensors."""
    groups = {}
    for sample in samples:
        key = tuple(tuple(sample[k].shape) for k in ('img', 'label') if k in sample)
        groups.setdefault(key, []).append(sample)
    batches = []
    for group in groups.values():
        batch = {k: [s[k] for s in group] for k in group[0]}
        for key in ('img', 'label'):
            if key in batch:
                batch[key] = torch.stack(batch[key])
        batches.append(batch)
    return batches
