// SPDX-License-Identifier: GPL-2.0
/*
 * provium_demo: the out-of-tree module of Provium's template (examples/module.lua).
 *
 * A misc device, /dev/provium_demo: read() returns the `greeting` parameter and a
 * newline; the PROVIUM_DEMO_REVERSE ioctl (provium_demo.h) reverses a user buffer
 * into another, both reached through pointers inside the ioctl's argument struct.
 */
#include <linux/atomic.h>
#include <linux/fs.h>
#include <linux/kernel.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/uaccess.h>

#include "provium_demo.h"

static char *greeting = "hello";
module_param(greeting, charp, 0444);
MODULE_PARM_DESC(greeting, "what read() returns");

static unsigned int max_len = 4096;
module_param(max_len, uint, 0444);
MODULE_PARM_DESC(max_len, "the longest buffer PROVIUM_DEMO_REVERSE accepts");

static atomic64_t reversed = ATOMIC64_INIT(0);

static ssize_t demo_read(struct file *file, char __user *buf, size_t count,
			 loff_t *ppos)
{
	char line[128];
	int len = scnprintf(line, sizeof(line), "%s\n", greeting);

	return simple_read_from_buffer(buf, count, ppos, line, len);
}

static long demo_reverse(struct provium_demo_xfer __user *arg)
{
	struct provium_demo_xfer x;
	u32 i, sum = 0;
	long ret = 0;
	u8 *data;

	if (copy_from_user(&x, arg, sizeof(x)))
		return -EFAULT;
	if (x.len > max_len)
		return -EINVAL;
	data = kmalloc(max_t(u32, x.len, 1), GFP_KERNEL);
	if (!data)
		return -ENOMEM;
	if (copy_from_user(data, u64_to_user_ptr(x.in), x.len)) {
		ret = -EFAULT;
		goto out;
	}
	for (i = 0; i < x.len / 2; i++)
		swap(data[i], data[x.len - 1 - i]);
	for (i = 0; i < x.len; i++)
		sum += data[i];
	if (copy_to_user(u64_to_user_ptr(x.out), data, x.len)) {
		ret = -EFAULT;
		goto out;
	}
	x.sum = sum;
	if (copy_to_user(arg, &x, sizeof(x))) {
		ret = -EFAULT;
		goto out;
	}
	atomic64_inc(&reversed);
out:
	kfree(data);
	return ret;
}

static long demo_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	switch (cmd) {
	case PROVIUM_DEMO_REVERSE:
		return demo_reverse((struct provium_demo_xfer __user *)arg);
	default:
		return -ENOTTY;
	}
}

static const struct file_operations demo_fops = {
	.owner = THIS_MODULE,
	.read = demo_read,
	.unlocked_ioctl = demo_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.llseek = default_llseek,
};

static struct miscdevice demo_dev = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "provium_demo",
	.fops = &demo_fops,
	.mode = 0666,
};

static int __init demo_init(void)
{
	int ret = misc_register(&demo_dev);

	if (ret)
		return ret;
	pr_info("provium_demo: loaded (greeting=%s, max_len=%u)\n", greeting,
		max_len);
	return 0;
}

static void __exit demo_exit(void)
{
	misc_deregister(&demo_dev);
	pr_info("provium_demo: unloaded after %lld reversals\n",
		(long long)atomic64_read(&reversed));
}

module_init(demo_init);
module_exit(demo_exit);
MODULE_DESCRIPTION("Provium's out-of-tree module template");
MODULE_LICENSE("GPL");
