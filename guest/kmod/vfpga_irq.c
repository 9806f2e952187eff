// SPDX-License-Identifier: GPL-2.0
/*
 * vfpga_irq: the smallest guest driver that lets a user-space test see the
 * vfpga device's MSI-X interrupts.
 *
 * It has no built-in ID table: user space binds it with
 *   echo "<vendor> <device>" > /sys/bus/pci/drivers/vfpga_irq/new_id
 * using the IDs from vfpga-regs, so no ID or offset is copied here. On probe it
 * enables the device, allocates every MSI-X vector the device offers (at most
 * VFPGA_MAX_VECTORS), counts the interrupts of each vector, and shows the
 * counts in the sysfs attribute "irq_counts" of the PCI device: one decimal
 * number per vector, separated by spaces. It does not touch the BARs, the
 * command register's bus-master bit or the device's registers: the test does
 * all of that through sysfs, as the issue asks.
 */
#include <linux/atomic.h>
#include <linux/interrupt.h>
#include <linux/module.h>
#include <linux/pci.h>
#include <linux/slab.h>

#define VFPGA_MAX_VECTORS 8

struct vfpga_vec {
	atomic_t count;
};

struct vfpga_irq {
	int nvec;
	struct vfpga_vec vec[VFPGA_MAX_VECTORS];
};

static irqreturn_t vfpga_irq_handler(int irq, void *arg)
{
	struct vfpga_vec *v = arg;

	atomic_inc(&v->count);
	return IRQ_HANDLED;
}

static ssize_t irq_counts_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	struct vfpga_irq *d = dev_get_drvdata(dev);
	int i, n = 0;

	for (i = 0; i < d->nvec; i++)
		n += sysfs_emit_at(buf, n, "%s%d", i ? " " : "", atomic_read(&d->vec[i].count));
	n += sysfs_emit_at(buf, n, "\n");
	return n;
}
static DEVICE_ATTR_RO(irq_counts);

static void vfpga_irq_release(struct pci_dev *pdev, struct vfpga_irq *d, int nreq)
{
	int i;

	for (i = 0; i < nreq; i++)
		free_irq(pci_irq_vector(pdev, i), &d->vec[i]);
	pci_free_irq_vectors(pdev);
}

static int vfpga_irq_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct vfpga_irq *d;
	int i, err, nvec;

	d = devm_kzalloc(&pdev->dev, sizeof(*d), GFP_KERNEL);
	if (!d)
		return -ENOMEM;
	err = pci_enable_device(pdev);
	if (err)
		return err;
	nvec = pci_msix_vec_count(pdev);
	if (nvec <= 0) {
		dev_err(&pdev->dev, "vfpga_irq: no MSI-X capability (%d)\n", nvec);
		err = -ENODEV;
		goto disable;
	}
	nvec = min(nvec, VFPGA_MAX_VECTORS);
	nvec = pci_alloc_irq_vectors(pdev, nvec, nvec, PCI_IRQ_MSIX);
	if (nvec < 0) {
		dev_err(&pdev->dev, "vfpga_irq: MSI-X allocation failed (%d)\n", nvec);
		err = nvec;
		goto disable;
	}
	d->nvec = nvec;
	for (i = 0; i < nvec; i++) {
		err = request_irq(pci_irq_vector(pdev, i), vfpga_irq_handler, 0, "vfpga", &d->vec[i]);
		if (err) {
			vfpga_irq_release(pdev, d, i);
			goto disable;
		}
	}
	pci_set_drvdata(pdev, d);
	err = device_create_file(&pdev->dev, &dev_attr_irq_counts);
	if (err) {
		vfpga_irq_release(pdev, d, nvec);
		goto disable;
	}
	dev_info(&pdev->dev, "vfpga_irq: %d MSI-X vectors\n", nvec);
	return 0;
disable:
	pci_disable_device(pdev);
	return err;
}

static void vfpga_irq_remove(struct pci_dev *pdev)
{
	struct vfpga_irq *d = pci_get_drvdata(pdev);

	device_remove_file(&pdev->dev, &dev_attr_irq_counts);
	vfpga_irq_release(pdev, d, d->nvec);
	pci_disable_device(pdev);
}

static struct pci_driver vfpga_irq_driver = {
	.name = "vfpga_irq",
	/*
	 * No ID table: bound through new_id only. (With an empty table, new_id
	 * refuses every entry: it only accepts driver_data found in the table.)
	 */
	.id_table = NULL,
	.probe = vfpga_irq_probe,
	.remove = vfpga_irq_remove,
};
module_pci_driver(vfpga_irq_driver);

MODULE_DESCRIPTION("vfpga test driver: counts MSI-X interrupts per vector");
MODULE_LICENSE("GPL");
