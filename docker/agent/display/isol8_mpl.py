"""isol8's matplotlib backend (MPLBACKEND=module://isol8_mpl): renders like Agg, and `plt.show()`
hands every open figure to isol8 as an image/png result. Figures still open when the program ends
are handed over too. The figures go out through isol8_display's channel."""
import atexit

from matplotlib.backend_bases import FigureManagerBase
from matplotlib.backends.backend_agg import FigureCanvasAgg

import isol8_display

FigureCanvas = FigureCanvasAgg
FigureManager = FigureManagerBase


def show(*args, **kwargs):
    """Send the open figures and close them (the inline backend's behaviour)."""
    isol8_display.show_open_figures()


atexit.register(isol8_display.show_open_figures)
