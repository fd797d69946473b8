"""A per-video metric defined outside the harness: mean absolute error, the worked example of README "Adding a metric"."""
from metrics.base import VideoMetric, to_unit_range


class MAE(VideoMetric):
    """Mean absolute RGB error per video on [0, 1] (lower is better)."""

    name = "mae"               # key in metrics.json and column in per_video.csv
    title = "MAE"              # table header and plot label
    higher_is_better = False   # leaderboards sort ascending, Pareto fronts keep the lowest
    unit = "[0, 1] RGB"        # shown on plot axes
    digits = 4                 # decimals in tables
    per_video = True           # one value per video: leaderboards show a bootstrap interval

    def video_values(self, real, fake):
        error = (to_unit_range(real) - to_unit_range(fake)).abs()
        return error.flatten(1).mean(dim=1).double()
