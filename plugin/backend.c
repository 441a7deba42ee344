/* subpage: what every backend shares (see backend.h).
 *
 * One buffer of zeroes, for backends that zero a range by writing it
 * (file=: the last fallback; uri=: a remote that cannot zero), and
 * backend_close.
 */

#include <string.h>

#include "backend.h"

char backend_zeroes[BACKEND_ZEROES_SIZE];

void
backend_close (struct backend *be)
{
  if (be->ops != NULL && be->close != NULL)
    be->close (be->handle);
  memset (be, 0, sizeof *be);
}
