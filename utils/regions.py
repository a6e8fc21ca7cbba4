"""Connected changed regions of a mask that arrives in row bands, in memory bounded by one band.

`RegionTracker.feed(row0, changed, prob)` labels each band (4-connectivity, OpenCV) and joins the
labels that touch across the band's top row to the regions still open from the band above
(union-find over those only). A region is finished as soon as a band no longer continues it;
its record is then final:

    top, left, bottom, right   pixel bounding box (bottom/right exclusive)
    pixels                     pixel count
    prob_sum                   sum of the change probability over its pixels
    seed_row, seed_col         one of its pixels (the first in raster order of its first band)

The records (64 bytes per region) are all that is kept. A region crossing any number of band
borders is one record; the seed and the box are enough to cut the region out of the mask file
again later (`region_mask`), e.g. to draw its polygon.
"""
import cv2
import numpy as np

TOP, LEFT, BOTTOM, RIGHT, PIXELS, PROB_SUM, SEED_ROW, SEED_COL = range(8)
FIELDS = 8


def _merge(records):
    """One record from several (rows of a (k, 8) array) of the same region."""
    out = records[0].copy()
    out[TOP] = records[:, TOP].min()
    out[LEFT] = records[:, LEFT].min()
    out[BOTTOM] = records[:, BOTTOM].max()
    out[RIGHT] = records[:, RIGHT].max()
    out[PIXELS] = records[:, PIXELS].sum()
    out[PROB_SUM] = records[:, PROB_SUM].sum()
    return out


class _UnionFind:
    def __init__(self):
        self.parent = {}

    def find(self, x):
        root = x
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while x != root:                     # path compression
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, x, y):
        rx, ry = self.find(x), self.find(y)
        if rx != ry:
            self.parent[max(rx, ry)] = min(rx, ry)


class RegionTracker:
    def __init__(self, width):
        self.width = width
        self.next_row = 0
        self.next_id = 0
        self.open = {}                        # region id -> record, regions touching the last row
        self.bottom = np.full(width, -1, np.int64)   # region id of each pixel of the last row
        self.finished = []                    # (k, 8) arrays

    def feed(self, row0, changed, prob=None):
        """Add rows [row0, row0 + n) of the mask: `changed` (n, W) bool, `prob` (n, W) float."""
        if row0 != self.next_row or changed.shape[1] != self.width:
            raise ValueError(f'bands must come in order and {self.width} wide; got row {row0}, '
                             f'expected {self.next_row}')
        n = changed.shape[0]
        count, labels, stats, _ = cv2.connectedComponentsWithStats(
            changed.astype(np.uint8), connectivity=4, ltype=cv2.CV_32S)
        records = self._band_records(row0, labels, stats, count, prob)
        start = self.next_id                                 # local label l has id start + l - 1
        ids = start + np.arange(count - 1)
        self.next_id += count - 1

        # (region above, label below) pairs that touch across the band's top row
        above, below = self.bottom, labels[0]
        touching = (above >= 0) & (below > 0)
        pairs = np.unique(np.stack([above[touching], ids[below[touching] - 1]], 1), axis=0)
        uf = _UnionFind()
        for up, down in pairs:
            uf.union(int(up), int(down))
        groups = {}
        for member in {int(v) for v in pairs.ravel()}:
            groups.setdefault(uf.find(member), []).append(member)

        in_last = np.zeros(count, bool)                      # labels present in the last row
        in_last[labels[-1]] = True
        in_last = in_last[1:]
        rep = ids.copy()                                     # local index -> its region id
        grouped = np.zeros(count - 1, bool)
        new_open = {}
        for root, members in groups.items():
            rows, continues = [], False
            for m in members:
                if m < start:                                # an open region of the band above
                    rows.append(self.open.pop(m))
                else:
                    local = m - start
                    rows.append(records[local])
                    rep[local], grouped[local] = root, True
                    continues |= bool(in_last[local])
            merged = _merge(np.array(rows))
            if continues:
                new_open[root] = merged
            else:
                self.finished.append(merged[None])
        if self.open:                     # open regions above that nothing below continues
            self.finished.append(np.array(list(self.open.values())))
        for local in np.flatnonzero(~grouped & in_last):     # new regions reaching the last row
            new_open[int(ids[local])] = records[local]
        done = ~grouped & ~in_last
        if done.any():
            self.finished.append(records[done])
        self.open = new_open
        self.bottom = np.where(labels[-1] > 0, rep[labels[-1] - 1] if count > 1 else -1, -1)
        self.next_row = row0 + n

    @staticmethod
    def _band_records(row0, labels, stats, count, prob):
        records = np.zeros((count - 1, FIELDS), np.float64)
        if count <= 1:
            return records
        records[:, TOP] = stats[1:, cv2.CC_STAT_TOP] + row0
        records[:, LEFT] = stats[1:, cv2.CC_STAT_LEFT]
        records[:, BOTTOM] = records[:, TOP] + stats[1:, cv2.CC_STAT_HEIGHT]
        records[:, RIGHT] = records[:, LEFT] + stats[1:, cv2.CC_STAT_WIDTH]
        records[:, PIXELS] = stats[1:, cv2.CC_STAT_AREA]
        flat = labels.ravel()
        where = np.flatnonzero(flat)
        if prob is not None:
            records[:, PROB_SUM] = np.bincount(flat[where], weights=prob.ravel()[where],
                                               minlength=count)[1:]
        first = np.full(count, flat.size, np.int64)
        np.minimum.at(first, flat[where], where)
        records[:, SEED_ROW] = first[1:] // labels.shape[1] + row0
        records[:, SEED_COL] = first[1:] % labels.shape[1]
        return records

    def close(self):
        """All regions, (k, 8) float64 sorted by top row then seed; the tracker is spent."""
        if self.open:
            self.finished.append(np.array(list(self.open.values())))
            self.open = {}
        if not self.finished:
            return np.zeros((0, FIELDS), np.float64)
        regions = np.concatenate(self.finished)
        self.finished = []
        order = np.lexsort((regions[:, SEED_COL], regions[:, SEED_ROW], regions[:, TOP]))
        return regions[order]


def region_mask(changed_window, seed_row, seed_col):
    """The 4-connected component of `changed_window` (bool) containing the seed pixel
    (coordinates relative to the window) -> bool array of the window's shape."""
    _, labels = cv2.connectedComponents(changed_window.astype(np.uint8), connectivity=4,
                                        ltype=cv2.CV_32S)
    return labels == labels[seed_row, seed_col]
