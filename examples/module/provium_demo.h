/* SPDX-License-Identifier: GPL-2.0 */
/* The user-space interface of provium_demo (examples/module.lua drives it). */
#ifndef PROVIUM_DEMO_H
#define PROVIUM_DEMO_H

#include <linux/ioctl.h>
#include <linux/types.h>

/*
 * PROVIUM_DEMO_REVERSE: copies `len` bytes from `in`, writes them reversed to `out`
 * and their byte sum to `sum`. `len` above the module's max_len parameter: -EINVAL.
 */
struct provium_demo_xfer {
	__u64 in;	/* offset 0: user pointer to the input */
	__u64 out;	/* offset 8: user pointer to a buffer of len bytes */
	__u32 len;	/* offset 16 */
	__u32 sum;	/* offset 20: set by the driver */
};

#define PROVIUM_DEMO_REVERSE _IOWR('P', 1, struct provium_demo_xfer) /* 0xc0185001 */

#endif
