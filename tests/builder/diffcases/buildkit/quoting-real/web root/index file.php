<?php echo "hi"; ?>
