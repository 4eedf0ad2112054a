"""Pure tensor math of sparsity: masks, scores, selection, applying masks, measuring sparsity. No Accelerate, no Hub."""
